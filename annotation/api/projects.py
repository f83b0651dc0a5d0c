"""/api/v1 projects and their members."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors, services
from ..errors import Forbidden
from ..models import FeedbackKind, Project, Role
from .common import valid


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
            "created_at",
            "role",
        ]


class ProjectListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        kind = serializers.ChoiceField(choices=FeedbackKind.choices, default=FeedbackKind.PAIRWISE)
        overlap = serializers.IntegerField(default=1)
        lease_seconds = serializers.IntegerField(default=600)
        instructions = serializers.CharField(default="", allow_blank=True)

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


class ProjectDetailApi(APIView):
    @extend_schema(
        responses={
            200: inline_serializer(
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
        }
    )
    def get(self, request, project_id: int):
        project, role = selectors.access_project(user=request.user, project_id=project_id)
        project.role = role
        progress = selectors.project_progress(project=project)
        return Response(
            {"project": ProjectOutputSerializer(project).data, "progress": progress.__dict__}
        )


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
