"""/api/v1 projects and their members."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors, services
from ..errors import Forbidden
from ..kinds import registered
from ..models import Project, Role
from .common import valid
from .loop import ErrorSerializer
from .parsers import JSONParser


class ProjectOutputSerializer(serializers.ModelSerializer):
    role = serializers.CharField(read_only=True)

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "kind",
            "overlap",
            "lease_seconds",
            "instructions",
            "kind_settings",
            "created_at",
            "role",
        ]


class ProjectListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        # Only the registered kinds: a kind without a module cannot be annotated.
        kind = serializers.ChoiceField(
            choices=[(k.name, k.label) for k in registered()],
            default="pairwise",
            error_messages={
                "invalid_choice": "feedback kind '{input}' is not available yet; available: "
                + ", ".join(k.name for k in registered())
            },
        )
        overlap = serializers.IntegerField(default=1)
        lease_seconds = serializers.IntegerField(default=600)
        instructions = serializers.CharField(default="", allow_blank=True)
        kind_settings = serializers.DictField(
            required=False,
            allow_null=True,
            help_text="Settings of the kind (e.g. a hallucination project's span categories); "
            "defaults when left out.",
        )

    @extend_schema(responses={200: ProjectOutputSerializer(many=True)})
    def get(self, request):
        projects = list(selectors.project_visible_to(user=request.user))
        roles = selectors.roles_of(user=request.user, projects=projects)
        for project in projects:
            project.role = roles[project.pk]
        return Response(ProjectOutputSerializer(projects, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: ProjectOutputSerializer})
    def post(self, request):
        if not (request.user.is_staff or request.user.has_perm("annotation.add_project")):
            raise Forbidden(
                "only staff and users with the 'add project' permission create projects"
            )
        data = valid(self.InputSerializer, request.data)
        project = services.project_create(creator=request.user, **data)
        project.role = Role.MANAGER
        return Response(ProjectOutputSerializer(project).data, status=status.HTTP_201_CREATED)


ProjectDetailSerializer = inline_serializer(
    "ProjectDetail",
    {
        "project": ProjectOutputSerializer(),
        "progress": inline_serializer(
            "ProjectProgress",
            {
                "tasks": serializers.IntegerField(),
                "complete": serializers.IntegerField(),
                "judgements_wanted": serializers.IntegerField(),
                "judgements": serializers.IntegerField(),
                "live_leases": serializers.IntegerField(),
            },
        ),
    },
)


class ProjectDetailApi(APIView):
    # Settings are typed JSON (lists, booleans): a form-encoded body could only carry strings.
    parser_classes = [JSONParser]

    class InputSerializer(serializers.Serializer):
        kind_settings = serializers.DictField(
            required=False,
            help_text="The kind's settings to change (e.g. a hallucination project's "
            "categories, show_context); those left out keep their values. Stored judgements "
            "are not touched: spans keep the category names they were given, and exports "
            "carry them as they are.",
        )

        def validate(self, attrs):
            # A field this operation does not change is refused, not silently ignored.
            unknown = sorted(set(self.initial_data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {
                        name: "cannot be changed here; this operation takes kind_settings only"
                        for name in unknown
                    }
                )
            return attrs

    @extend_schema(responses={200: ProjectDetailSerializer})
    def get(self, request, project_id: int):
        project, role = selectors.access_project(user=request.user, project_id=project_id)
        return Response(self._detail(project, role))

    @extend_schema(
        request=InputSerializer,
        responses={
            200: ProjectDetailSerializer,
            400: OpenApiResponse(
                ErrorSerializer, description="a setting is refused (named); nothing saved"
            ),
            403: OpenApiResponse(ErrorSerializer, description="only managers change settings"),
            404: OpenApiResponse(ErrorSerializer, description="no such project in your projects"),
            409: OpenApiResponse(ErrorSerializer, description="the project is archived"),
        },
    )
    def patch(self, request, project_id: int):
        project, role = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.MANAGE
        )
        data = valid(self.InputSerializer, request.data)
        project = services.project_kind_settings_set(
            project=project, kind_settings=data.get("kind_settings", {})
        )
        return Response(self._detail(project, role))

    @staticmethod
    def _detail(project: Project, role: str) -> dict:
        project.role = role
        progress = selectors.project_progress(project=project)
        return {"project": ProjectOutputSerializer(project).data, "progress": progress.__dict__}


class MemberSerializer(serializers.Serializer):
    username = serializers.CharField(source="user.username")
    role = serializers.ChoiceField(choices=Role.choices)


class MembershipListCreateApi(APIView):
    """A project's members: listed and added by its managers."""

    class InputSerializer(serializers.Serializer):
        username = serializers.CharField()
        role = serializers.ChoiceField(choices=Role.choices)

    class OutputSerializer(serializers.Serializer):
        username = serializers.CharField(source="user.username")
        role = serializers.CharField()
        created_at = serializers.DateTimeField()

    @extend_schema(responses={200: OutputSerializer(many=True)})
    def get(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.MANAGE
        )
        members = selectors.members_of(project=project)
        return Response(self.OutputSerializer(members, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: MemberSerializer, 409: OpenApiResponse(description="project archived")},
    )
    def post(self, request, project_id: int):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.MANAGE
        )
        data = valid(self.InputSerializer, request.data)
        membership = services.membership_set(
            project=project, username=data["username"], role=data["role"]
        )
        return Response(MemberSerializer(membership).data, status=status.HTTP_201_CREATED)


class MembershipDetailApi(APIView):
    """One member: their role changed, or removed (their live leases go back to the queue)."""

    class InputSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(
        request=InputSerializer,
        responses={
            200: MemberSerializer,
            404: OpenApiResponse(description="not a member"),
            409: OpenApiResponse(description="the last manager, or the project is archived"),
        },
    )
    def patch(self, request, project_id: int, username: str):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.MANAGE
        )
        data = valid(self.InputSerializer, request.data)
        membership = services.membership_set(
            project=project, username=username, role=data["role"], create=False
        )
        return Response(MemberSerializer(membership).data)

    @extend_schema(
        request=None,
        responses={
            204: OpenApiResponse(description="removed"),
            404: OpenApiResponse(description="not a member"),
            409: OpenApiResponse(description="the last manager, or the project is archived"),
        },
    )
    def delete(self, request, project_id: int, username: str):
        project, _ = selectors.access_project(
            user=request.user, project_id=project_id, roles=selectors.MANAGE
        )
        services.membership_remove(project=project, username=username)
        return Response(status=status.HTTP_204_NO_CONTENT)
